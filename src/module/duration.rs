//! Durations as Flink's `TimeUtils.parseDuration` reads them: `"2 min"`, `"10s"`, `"1day"`.

use std::time::Duration;

/// The units a duration may carry, as `(labels, nanoseconds per unit)`. Labels are matched
/// after lower-casing; Flink's plural forms (`"days"`, `"secs"`) are listed too.
const UNITS: [(&[&str], u64); 7] = [
    (&["ns", "nano", "nanos", "nanosecond", "nanoseconds"], 1),
    (&["µs", "μs", "us", "micro", "micros", "microsecond", "microseconds"], 1_000),
    (&["ms", "milli", "millis", "millisecond", "milliseconds"], 1_000_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000),
    (&["m", "min", "mins", "minute", "minutes"], 60 * 1_000_000_000),
    (&["h", "hour", "hours"], 3_600 * 1_000_000_000),
    (&["d", "day", "days"], 86_400 * 1_000_000_000),
];

/// Parses a duration the way StateFun does (Flink's `TimeUtils.parseDuration`): a whole
/// number, optional whitespace, then an optional unit among `ns`, `nano(s)`,
/// `nanosecond(s)`, `µs`/`us`, `micro(s)`, `microsecond(s)`, `ms`, `milli(s)`,
/// `millisecond(s)`, `s`, `sec(s)`, `second(s)`, `m`, `min(s)`, `minute(s)`, `h`, `hour(s)`,
/// `d`, `day(s)` (any case). A number without a unit is milliseconds.
///
/// The error says what is wrong with the text, without repeating it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the text is empty".to_owned());
    }
    let digits_len = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits_len == 0 {
        return Err("it does not start with a whole number".to_owned());
    }
    let (digits, rest) = trimmed.split_at(digits_len);
    let value: u64 = digits.parse().map_err(|_| format!("the number {digits} is too large"))?;
    let label = rest.trim().to_lowercase();
    if label.is_empty() {
        return Ok(Duration::from_millis(value));
    }
    let Some(&(_, unit_nanos)) = UNITS.iter().find(|(labels, _)| labels.contains(&label.as_str())) else {
        return Err(format!("unknown unit {label:?}; the units are ns, us, ms, s, min, h and d"));
    };
    // Split into seconds and the rest so that no unit overflows before it must.
    let too_long = || format!("{value}{rest} is too long");
    if unit_nanos >= 1_000_000_000 {
        let secs = value.checked_mul(unit_nanos / 1_000_000_000).ok_or_else(too_long)?;
        Ok(Duration::from_secs(secs))
    } else {
        let nanos = u128::from(value) * u128::from(unit_nanos);
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
        // The remainder is below 10^9 and fits in u32.
        let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| too_long())?;
        Ok(Duration::new(secs, subsec))
    }
}

#[cfg(test)]
mod tests {
    //! Every unit label Flink accepts, plain milliseconds, whitespace and case, and the
    //! texts that must be refused.

    use super::*;

    #[test]
    fn every_unit_label_parses() {
        let cases: [(&str, Duration); 12] = [
            ("500", Duration::from_millis(500)),
            ("7ns", Duration::from_nanos(7)),
            ("7 nanos", Duration::from_nanos(7)),
            ("3µs", Duration::from_micros(3)),
            ("3 us", Duration::from_micros(3)),
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("10 seconds", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("15min", Duration::from_secs(900)),
            ("1 hour", Duration::from_secs(3_600)),
            ("1day", Duration::from_secs(86_400)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn all_labels_of_every_unit_are_known() {
        for (labels, unit_nanos) in UNITS {
            for label in labels {
                let nanos = parse_duration(&format!("2{label}")).unwrap().as_nanos();
                assert_eq!(nanos, 2 * u128::from(unit_nanos), "{label}");
            }
        }
    }

    #[test]
    fn whitespace_and_case_do_not_matter() {
        assert_eq!(parse_duration("  1 MIN "), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1minute"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2 Days"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_texts_are_refused_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("two minutes").unwrap_err().contains("whole number"));
        assert!(parse_duration("-1s").unwrap_err().contains("whole number"));
        assert!(parse_duration("1.5s").unwrap_err().contains("unknown unit \".5s\""));
        assert!(parse_duration("3 fortnights").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("99999999999999999999").unwrap_err().contains("too large"));
        assert!(parse_duration("18446744073709551615d").unwrap_err().contains("too long"));
        assert_eq!(parse_duration("18446744073709551615ns"), Ok(Duration::from_nanos(u64::MAX)));
    }
}
