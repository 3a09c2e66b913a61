//! Which key each request goes to: a small seeded generator and the key distributions
//! (uniform, Zipf, one hot key). Keys are numbers `0..keys`, rendered `k{n}` in requests.

use std::str::FromStr;

use crate::{limits, Error};

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough to pick keys. A run with
/// the same seed picks the same keys in each worker.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The generator of stream `stream` (a worker) of a run seeded with `seed`. The stream's
    /// start is scrambled, so streams do not walk the same sequence shifted by a step.
    pub fn for_stream(seed: u64, stream: u64) -> Rng {
        let mut base = Rng::new(seed ^ stream.wrapping_mul(Self::GAMMA));
        Rng::new(base.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (Lemire's multiply-shift; the bias is below 2^-64 * bound).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A number in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// How requests spread over the keys, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Key `n` drawn with weight `1 / (n + 1)^exponent`: key 0 is the most popular.
    Zipf { exponent: f64 },
    /// Always key 0: one address, so one shard, takes the whole load.
    Hot,
}

impl FromStr for Distribution {
    type Err = Error;

    fn from_str(text: &str) -> Result<Distribution, Error> {
        let usage = "expected uniform, zipf:S (S >= 0, e.g. zipf:0.99) or hot";
        match text {
            "uniform" => Ok(Distribution::Uniform),
            "hot" => Ok(Distribution::Hot),
            _ => {
                let exponent = text.strip_prefix("zipf:").ok_or_else(|| Error::config(format!("{text:?}: {usage}")))?;
                match exponent.parse::<f64>() {
                    Ok(exponent) if exponent.is_finite() && exponent >= 0.0 => Ok(Distribution::Zipf { exponent }),
                    _ => Err(Error::config(format!("{text:?}: bad Zipf exponent; {usage}"))),
                }
            }
        }
    }
}

/// Draws keys from a distribution over `keys` keys.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    keys: u64,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Uniform,
    Hot,
    /// `cdf[n]` is the probability of a key `<= n`; the last entry is exactly 1.
    Zipf {
        cdf: Box<[f64]>,
    },
}

impl KeyPicker {
    pub fn new(keys: u64, distribution: Distribution) -> Result<KeyPicker, Error> {
        if keys == 0 {
            return Err(Error::config("--keys must be at least 1"));
        }
        let shape = match distribution {
            Distribution::Uniform => Shape::Uniform,
            Distribution::Hot => Shape::Hot,
            Distribution::Zipf { exponent } => {
                if keys > limits::zipf_keys_max {
                    let max = limits::zipf_keys_max;
                    return Err(Error::config(format!("--keys {keys}: a Zipf distribution takes at most {max} keys")));
                }
                Shape::Zipf { cdf: zipf_cdf(keys, exponent) }
            }
        };
        Ok(KeyPicker { keys, shape })
    }

    /// The number of keys requests are spread over.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Draws the next key number, in `0..keys`.
    pub fn pick(&self, rng: &mut Rng) -> u64 {
        match &self.shape {
            Shape::Uniform => rng.below(self.keys),
            Shape::Hot => 0,
            Shape::Zipf { cdf } => {
                // The first key whose cumulative probability exceeds the draw; the last entry
                // is exactly 1 and the draw is below 1, so there always is one.
                let draw = rng.unit();
                cdf.partition_point(|&below| below <= draw) as u64
            }
        }
    }
}

fn zipf_cdf(keys: u64, exponent: f64) -> Box<[f64]> {
    let mut cdf: Vec<f64> = Vec::with_capacity(usize::try_from(keys).unwrap_or(0));
    let mut total = 0.0;
    for n in 0..keys {
        total += 1.0 / ((n + 1) as f64).powf(exponent);
        cdf.push(total);
    }
    for below in &mut cdf {
        *below /= total;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    //! Seeded draws counted per key: each distribution's shape, within bounds that hold for any seed.

    use super::*;

    fn histogram(picker: &KeyPicker, draws: u32) -> Vec<u32> {
        let mut rng = Rng::new(7);
        let mut counts = vec![0_u32; picker.keys() as usize];
        for _ in 0..draws {
            counts[picker.pick(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipf_favours_low_keys_in_proportion() {
        let picker = KeyPicker::new(100, Distribution::Zipf { exponent: 1.0 }).unwrap();
        let counts = histogram(&picker, 200_000);
        let most = counts.iter().max().unwrap();
        assert_eq!(counts[0], *most, "key 0 is the most frequent: {:?}", &counts[..8]);
        for n in 0..5 {
            assert!(counts[n] > counts[n + 1], "counts decrease with the key: {:?}", &counts[..8]);
        }
        // Weight 1/(n+1): key 0 is drawn about twice as often as key 1, four times as key 3.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.8..2.2).contains(&ratio), "count(k0)/count(k1) = {ratio}");
        let ratio = f64::from(counts[0]) / f64::from(counts[3]);
        assert!((3.6..4.4).contains(&ratio), "count(k0)/count(k3) = {ratio}");
        // The tail still gets its share: about 1/100 / H(100) of the draws for the last key.
        assert!(counts[99] > 0);
    }

    #[test]
    fn zipf_exponent_zero_is_uniform_and_large_is_hot() {
        let flat = histogram(&KeyPicker::new(10, Distribution::Zipf { exponent: 0.0 }).unwrap(), 100_000);
        assert!(flat.iter().all(|&count| (9_000..11_000).contains(&count)), "{flat:?}");
        let steep = histogram(&KeyPicker::new(10, Distribution::Zipf { exponent: 60.0 }).unwrap(), 10_000);
        assert_eq!(steep[0], 10_000, "{steep:?}");
    }

    #[test]
    fn uniform_spreads_evenly_and_hot_takes_one_key() {
        let counts = histogram(&KeyPicker::new(10, Distribution::Uniform).unwrap(), 100_000);
        assert!(counts.iter().all(|&count| (9_000..11_000).contains(&count)), "{counts:?}");
        let counts = histogram(&KeyPicker::new(10, Distribution::Hot).unwrap(), 1_000);
        assert_eq!(counts[0], 1_000);
    }

    #[test]
    fn one_key_always_picks_key_zero() {
        for distribution in [Distribution::Uniform, Distribution::Hot, Distribution::Zipf { exponent: 0.99 }] {
            let counts = histogram(&KeyPicker::new(1, distribution).unwrap(), 1_000);
            assert_eq!(counts, [1_000], "{distribution:?}");
        }
    }

    #[test]
    fn distributions_parse_and_bad_ones_are_refused() {
        assert_eq!("uniform".parse::<Distribution>().unwrap(), Distribution::Uniform);
        assert_eq!("hot".parse::<Distribution>().unwrap(), Distribution::Hot);
        assert_eq!("zipf:0.99".parse::<Distribution>().unwrap(), Distribution::Zipf { exponent: 0.99 });
        for bad in ["", "zipf", "zipf:", "zipf:-1", "zipf:NaN", "zipf:inf", "Uniform", "hot:1"] {
            assert!(bad.parse::<Distribution>().is_err(), "{bad:?}");
        }
        assert!(KeyPicker::new(0, Distribution::Uniform).is_err());
        assert!(KeyPicker::new(limits::zipf_keys_max + 1, Distribution::Zipf { exponent: 1.0 }).is_err());
    }

    #[test]
    fn streams_of_one_seed_differ_and_replay() {
        let first: Vec<u64> = (0..4).map(|stream| Rng::for_stream(1, stream).next_u64()).collect();
        let again: Vec<u64> = (0..4).map(|stream| Rng::for_stream(1, stream).next_u64()).collect();
        assert_eq!(first, again);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), first.len(), "{first:?}");

        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            assert!(rng.below(3) < 3);
            let unit = rng.unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
