//! `--plot`: the latency distribution as an SVG chart, in the manner of HdrHistogram's
//! plotter (hdr-plot): latency in milliseconds (linear) against percentile, the percentile
//! axis spaced by `log10(1 / (1 - p))` so that 0%, 90%, 99%, 99.9%, ... are equally far apart
//! and the tail gets as much room as the body.
//!
//! The SVG is written by hand: a title, a grid, tick and axis labels and one polyline through
//! the histogram's percentile steps. The axis runs to the nines the run's request count can
//! resolve (1,000 requests: 99.9%); the maximum sits at the right edge.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// The chart's size in SVG user units (pixels when shown as is).
const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;

/// Room around the plot area for the title, the tick labels and the axis labels.
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 40.0;
const MARGIN_TOP: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 60.0;

/// The most nines the percentile axis shows, 99.99999%: a run resolves that many only with
/// ten million requests, and past it the labels no longer fit.
const NINES_MAX: u32 = 7;

/// Percentile steps of the curve per halving of the distance to 100%: about 33 per nine,
/// smooth at this width and still a small file.
const STEPS_PER_HALF_DISTANCE: u32 = 10;

/// Horizontal grid lines (latency ticks) to aim for; the step is rounded to 1, 2 or 5 times
/// a power of ten.
const LATENCY_TICKS: f64 = 6.0;

/// Writes `histogram` (latencies in microseconds) as an SVG chart titled `title`.
pub fn write_svg(histogram: &Histogram<u64>, title: &str, out: &mut impl Write) -> io::Result<()> {
    let points: Vec<(f64, f64)> = histogram
        .iter_quantiles(STEPS_PER_HALF_DISTANCE)
        .map(|step| (step.quantile_iterated_to(), step.value_iterated_to() as f64 / 1000.0))
        .collect();
    let chart = Chart::new(histogram.len(), points.iter().map(|&(_, ms)| ms).fold(0.0, f64::max));

    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    )?;
    writeln!(out, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#)?;
    writeln!(
        out,
        r#"<text x="{:.1}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escaped(title)
    )?;
    writeln!(
        out,
        r##"<text x="{:.1}" y="50" font-size="12" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        escaped(&subtitle(histogram))
    )?;

    let (left, right, top, bottom) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM);
    writeln!(out, r##"<g stroke="#ddd" stroke-width="1">"##)?;
    for nines in 0..=chart.nines {
        let x = chart.x_of_nines(f64::from(nines));
        writeln!(out, r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}"/>"#)?;
    }
    for tick in 0..=chart.latency_ticks {
        let y = chart.y(chart.latency_step_ms * f64::from(tick));
        writeln!(out, r#"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}"/>"#)?;
    }
    writeln!(out, "</g>")?;
    writeln!(
        out,
        r##"<path d="M {left:.1} {top:.1} V {bottom:.1} H {right:.1}" fill="none" stroke="#333" stroke-width="1"/>"##
    )?;

    writeln!(out, r#"<g font-size="12" text-anchor="middle">"#)?;
    for nines in 0..=chart.nines {
        let x = chart.x_of_nines(f64::from(nines));
        writeln!(out, r#"<text x="{x:.1}" y="{:.1}">{}</text>"#, bottom + 18.0, percentile_label(nines))?;
    }
    writeln!(out, "</g>")?;
    writeln!(out, r#"<g font-size="12" text-anchor="end">"#)?;
    let decimals = (-chart.latency_step_ms.log10().floor()).max(0.0) as usize;
    for tick in 0..=chart.latency_ticks {
        let ms = chart.latency_step_ms * f64::from(tick);
        writeln!(out, r#"<text x="{:.1}" y="{:.1}">{ms:.decimals$}</text>"#, left - 8.0, chart.y(ms) + 4.0)?;
    }
    writeln!(out, "</g>")?;
    writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">Percentile</text>"#,
        (left + right) / 2.0,
        HEIGHT - 16.0
    )?;
    let (label_x, label_y) = (22.0, (top + bottom) / 2.0);
    writeln!(
        out,
        r#"<text x="{label_x:.1}" y="{label_y:.1}" font-size="13" text-anchor="middle" transform="rotate(-90 {label_x:.1} {label_y:.1})">Latency (ms)</text>"#
    )?;

    if points.is_empty() {
        writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="#555">no measured requests</text>"##,
            (left + right) / 2.0,
            (top + bottom) / 2.0
        )?;
    } else {
        write!(out, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points=""##)?;
        for (index, &(quantile, ms)) in points.iter().enumerate() {
            let separator = if index == 0 { "" } else { " " };
            write!(out, "{separator}{:.1},{:.1}", chart.x(quantile), chart.y(ms))?;
        }
        writeln!(out, r#""/>"#)?;
    }
    writeln!(out, "</svg>")
}

/// The geometry: where a percentile and a latency land.
struct Chart {
    /// Nines at the right edge: 3 is 99.9%.
    nines: u32,
    latency_step_ms: f64,
    /// Latency ticks above zero; the top one is at or above the largest latency.
    latency_ticks: u32,
}

impl Chart {
    fn new(count: u64, max_ms: f64) -> Chart {
        // 10^n requests resolve n nines; at least one nine so that the axis has a span.
        let nines = (count.max(1) as f64).log10().ceil().clamp(1.0, f64::from(NINES_MAX)) as u32;
        let top_ms = if max_ms > 0.0 { max_ms } else { 1.0 };
        let latency_step_ms = round_step(top_ms / LATENCY_TICKS);
        let latency_ticks = (top_ms / latency_step_ms).ceil().max(1.0) as u32;
        Chart { nines, latency_step_ms, latency_ticks }
    }

    /// The x of a point `nines` nines along the percentile axis (1.5 is about 96.8%).
    fn x_of_nines(&self, nines: f64) -> f64 {
        let span = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
        MARGIN_LEFT + span * nines.min(f64::from(self.nines)) / f64::from(self.nines)
    }

    /// The x of a quantile (0 to 1); the maximum (1) and what lies past the axis's last nine
    /// sit at the right edge.
    fn x(&self, quantile: f64) -> f64 {
        let nines = if quantile < 1.0 { -(1.0 - quantile).log10() } else { f64::INFINITY };
        self.x_of_nines(nines)
    }

    fn y(&self, ms: f64) -> f64 {
        let span = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
        HEIGHT - MARGIN_BOTTOM - span * ms / (self.latency_step_ms * f64::from(self.latency_ticks))
    }
}

/// 1, 2 or 5 times a power of ten, the smallest at or above `raw`.
fn round_step(raw: f64) -> f64 {
    let power = 10_f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|mantissa| mantissa * power).find(|&step| step >= raw);
    step.unwrap_or(10.0 * power)
}

/// `0%`, `90%`, `99%`, `99.9%`, ...
fn percentile_label(nines: u32) -> String {
    match nines {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        _ => format!("99.{}%", "9".repeat(nines as usize - 2)),
    }
}

/// The figures under the title: how many requests, and the usual percentiles.
fn subtitle(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "0 requests".to_string();
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    format!(
        "{} requests: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        histogram.len(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    )
}

/// `text` with XML's special characters escaped, for an element's content.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            character if character.is_control() && !matches!(character, '\t' | '\n') => out.push(' '),
            character => out.push(character),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Charts of known histograms, checked as XML by a small well-formedness reader and read
    //! back: the labels, the axis span, and a curve that climbs left to right inside the plot.

    use super::*;
    use crate::report::latency_histogram;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = latency_histogram();
        for value in values {
            histogram.record(value).unwrap();
        }
        histogram
    }

    fn svg(histogram: &Histogram<u64>, title: &str) -> String {
        let mut out = Vec::new();
        write_svg(histogram, title, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Checks that `text` is one well-formed XML element (after a declaration): tags nest
    /// and close, attribute values are quoted, `&` starts a known entity, no `<` in text.
    /// Returns the element names in document order.
    fn well_formed(text: &str) -> Result<Vec<String>, String> {
        let body = text.strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#).ok_or("no XML declaration")?;
        let mut open: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = body;
        let mut roots = 0;
        while let Some(at) = rest.find('<') {
            check_text(&rest[..at])?;
            if !rest[..at].trim().is_empty() && open.is_empty() {
                return Err(format!("text outside the root: {:?}", &rest[..at]));
            }
            let end = rest[at..].find('>').ok_or("an unclosed tag")? + at;
            let tag = &rest[at + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(opened) if opened == name => continue,
                    opened => return Err(format!("</{name}> closes {opened:?}")),
                }
            }
            let (tag, empty) = match tag.strip_suffix('/') {
                Some(tag) => (tag, true),
                None => (tag, false),
            };
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                return Err(format!("a bad element name in <{tag}>"));
            }
            check_attributes(&tag[name_end..])?;
            if open.is_empty() {
                roots += 1;
            }
            names.push(name.to_string());
            if !empty {
                open.push(name.to_string());
            }
        }
        check_text(rest)?;
        if !open.is_empty() || roots != 1 || !rest.trim().is_empty() {
            return Err(format!("unclosed {open:?}, {roots} roots, trailing {rest:?}"));
        }
        Ok(names)
    }

    fn check_attributes(mut attributes: &str) -> Result<(), String> {
        loop {
            attributes = attributes.trim_start();
            if attributes.is_empty() {
                return Ok(());
            }
            let (name, after) =
                attributes.split_once("=\"").ok_or(format!("an unquoted attribute in {attributes:?}"))?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("a bad attribute name {name:?}"));
            }
            let (value, after) = after.split_once('"').ok_or("an unterminated attribute value")?;
            if value.contains('<') {
                return Err(format!("`<` in the attribute value {value:?}"));
            }
            check_text(value)?;
            attributes = after;
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            let entity = &rest[at..rest[at..].find(';').map_or(rest.len(), |end| at + end + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity) {
                return Err(format!("a bad entity {entity:?}"));
            }
            rest = &rest[at + entity.len()..];
        }
        Ok(())
    }

    /// The text contents of the `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|text| text.split_once('>')?.1.split_once("</text>"))
            .map(|(t, _)| t)
            .collect()
    }

    /// The polyline's points, as (x, y).
    fn curve(svg: &str) -> Vec<(f64, f64)> {
        let points = svg.split(r#"points=""#).nth(1).unwrap().split('"').next().unwrap();
        points
            .split(' ')
            .map(|point| {
                let (x, y) = point.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_chart_is_well_formed_with_percentile_labels_to_the_resolved_nines() {
        // 1 to 1000 us: a thousand requests resolve three nines.
        let svg = svg(&histogram(1..=1000), "example/counter & <friends>");
        let names = well_formed(&svg).unwrap_or_else(|error| panic!("{error}\n{svg}"));
        assert_eq!(names[0], "svg");
        assert_eq!(names.iter().filter(|name| *name == "polyline").count(), 1);

        let texts = texts(&svg);
        assert_eq!(texts[0], "example/counter &amp; &lt;friends&gt;");
        assert!(texts[1].starts_with("1000 requests: p50 0.500 ms, p99 0.990 ms"), "{}", texts[1]);
        for label in ["0%", "90%", "99%", "99.9%", "Percentile", "Latency (ms)"] {
            assert!(texts.contains(&label), "{label} in {texts:?}");
        }
        assert!(!texts.contains(&"99.99%"), "four nines need 10,000 requests: {texts:?}");
        // The latency axis starts at zero and reaches past the largest latency, 1 ms.
        assert!(texts.contains(&"0.0") && texts.contains(&"1.0"), "{texts:?}");

        let points = curve(&svg);
        assert!(points.len() > 30, "{points:?}");
        let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
        let (top, bottom) = (MARGIN_TOP, HEIGHT - MARGIN_BOTTOM);
        for &(x, y) in &points {
            assert!((left..=right).contains(&x) && (top..=bottom).contains(&y), "({x}, {y}) outside the plot");
        }
        // Latency grows with the percentile: right and up (SVG's y grows downwards).
        assert!(points.windows(2).all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 >= pair[1].1), "{points:?}");
        assert_eq!(points[0].0, left);
        assert_eq!(points[points.len() - 1].0, right, "the maximum sits at the right edge");
        // The median lands one third of the way to the third nine: log10(1 / (1 - 0.5)) / 3.
        let median_x = left + (right - left) * 2_f64.log10() / 3.0;
        let median = points.iter().find(|point| point.0 >= median_x - 0.1).unwrap();
        let median_ms = (bottom - median.1) / (bottom - top) * 1.0;
        assert!((median_ms - 0.5).abs() < 0.01, "the median at {median:?} reads {median_ms} ms");
    }

    #[test]
    fn more_requests_resolve_more_nines_up_to_the_limit() {
        let many = svg(&histogram((0..100_000).map(|value| 100 + value % 5000)), "many");
        well_formed(&many).unwrap();
        let texts = texts(&many);
        for label in ["99.99%", "99.999%"] {
            assert!(texts.contains(&label), "{label} in {texts:?}");
        }
        assert!(!texts.contains(&"99.9999%"), "{texts:?}");
        assert_eq!(percentile_label(NINES_MAX), "99.99999%");
        assert_eq!(Chart::new(u64::MAX, 1.0).nines, NINES_MAX);
    }

    #[test]
    fn an_empty_run_still_makes_a_chart() {
        let svg = svg(&latency_histogram(), "nothing\u{1}measured");
        let names = well_formed(&svg).unwrap_or_else(|error| panic!("{error}\n{svg}"));
        assert!(!names.iter().any(|name| name == "polyline"));
        let texts = texts(&svg);
        assert_eq!(texts[0], "nothing measured");
        assert!(texts.contains(&"no measured requests") && texts.contains(&"90%"), "{texts:?}");
    }

    #[test]
    fn the_checker_refuses_what_is_not_well_formed() {
        let declaration = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
        for bad in
            ["<svg><g></svg>", "<svg>a & b</svg>", "<svg x=1/>", "<svg/><svg/>", "<svg><g></g>", "<svg>&lt</svg>"]
        {
            assert!(well_formed(&format!("{declaration}{bad}")).is_err(), "{bad}");
        }
        assert_eq!(well_formed(&format!("{declaration}<svg a=\"&amp;\"><g/></svg>\n")).unwrap(), ["svg", "g"]);
    }

    #[test]
    fn latency_steps_are_round() {
        assert_eq!(round_step(0.13), 0.2);
        assert_eq!(round_step(3.0), 5.0);
        assert_eq!(round_step(7.0), 10.0);
        assert_eq!(round_step(1.0), 1.0);
        let chart = Chart::new(10, 4.2);
        assert_eq!((chart.latency_step_ms, chart.latency_ticks), (1.0, 5));
    }
}
