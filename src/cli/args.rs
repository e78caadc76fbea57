//! Argument checks shared by every command: numbers are validated where they are parsed, so
//! that no value can reach a division by zero, a NaN loss or a silently clamped setting.
//! Each returns clap's usual error (exit 2) naming the argument and the accepted range.

use clap::builder::TypedValueParser;

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| format!("{s:?} is not a number"))
}

macro_rules! at_least {
    ($name:ident, $t:ty) => {
        /// A whole number no smaller than `min`.
        pub fn $name(min: $t) -> impl TypedValueParser<Value = $t> {
            move |s: &str| -> Result<$t, String> {
                let v: $t = number(s)?;
                if v < min {
                    return Err(format!("must be at least {min}, got {v}"));
                }
                Ok(v)
            }
        }
    };
}
at_least!(at_least_usize, usize);

/// A whole number no larger than `max`.
pub fn at_most_usize(max: usize) -> impl TypedValueParser<Value = usize> {
    move |s: &str| -> Result<usize, String> {
        let v: usize = number(s)?;
        if v > max {
            return Err(format!("must be at most {max}, got {v}"));
        }
        Ok(v)
    }
}
at_least!(at_least_u64, u64);
at_least!(at_least_u32, u32);

/// A finite number greater than zero (learning rates, sizes given as floats).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("must be a finite number greater than 0, got {v}"));
    }
    Ok(v)
}

pub fn positive_f32(s: &str) -> Result<f32, String> {
    positive_f64(s).and_then(|v| {
        let f = v as f32;
        if f.is_finite() && f > 0.0 {
            Ok(f)
        } else {
            Err(format!("{v} is out of range"))
        }
    })
}

/// A finite number not below zero (loss weights: 0 switches a term off).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("must be a finite number, 0 or more, got {v}"));
    }
    Ok(v)
}

/// The most worker threads a run takes: more only costs (each thread's start and its
/// share of every parallel loop) on any machine of today.
pub const MAX_THREADS: usize = 256;

/// A worker thread count, 1 to [`MAX_THREADS`].
pub fn thread_count(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    if !(1..=MAX_THREADS).contains(&v) {
        return Err(format!("must be from 1 to {MAX_THREADS}, got {v}"));
    }
    Ok(v)
}

/// The longest duration a flag takes: a day.
pub const MAX_SECONDS: f64 = 86_400.0;

/// A duration in seconds, more than 0 and at most a day.
pub fn seconds(s: &str) -> Result<f64, String> {
    let v = positive_f64(s)?;
    if v > MAX_SECONDS {
        return Err(format!(
            "must be at most {MAX_SECONDS} seconds (a day), got {v}"
        ));
    }
    Ok(v)
}

/// A duration in seconds, 0 or more and at most a day.
pub fn seconds_or_zero(s: &str) -> Result<f64, String> {
    let v = non_negative_f64(s)?;
    if v > MAX_SECONDS {
        return Err(format!(
            "must be at most {MAX_SECONDS} seconds (a day), got {v}"
        ));
    }
    Ok(v)
}

/// A fraction in [0, 1) (momentum: 1 would freeze the statistics forever).
pub fn fraction_below_one(s: &str) -> Result<f32, String> {
    let v: f32 = number(s)?;
    if !(v.is_finite() && (0.0..1.0).contains(&v)) {
        return Err(format!("must be at least 0 and below 1, got {v}"));
    }
    Ok(v)
}

/// A training or evaluation crop size: a multiple of 4 (the network's two stride-2 stages)
/// and at least 16 (VGG16's relu4_3 is an eighth of it).
pub fn crop_size(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    if v < 16 || !v.is_multiple_of(4) {
        return Err(format!(
            "must be a multiple of 4 and at least 16 pixels, got {v}"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert!(positive_f64("NaN").is_err());
        assert!(positive_f64("inf").is_err());
        assert!(positive_f64("0").is_err());
        assert!(positive_f64("-1").is_err());
        assert_eq!(positive_f64("1e-3"), Ok(1e-3));
        assert!(positive_f32("1e39").is_err(), "overflows f32");
        assert!(non_negative_f64("nan").is_err());
        assert_eq!(non_negative_f64("0"), Ok(0.0));
        assert!(fraction_below_one("5").is_err());
        assert!(fraction_below_one("1").is_err());
        assert_eq!(fraction_below_one("0.5"), Ok(0.5));
        assert!(crop_size("0").is_err());
        assert!(crop_size("3").is_err());
        assert!(crop_size("130").is_err());
        assert_eq!(crop_size("128"), Ok(128));
    }
}
