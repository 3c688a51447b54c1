//! Kubernetes resource quantities (`"500m"`, `"4Gi"`, `"1.5"`, `"2e3"`), exactly.
//!
//! k8s-openapi carries a quantity as its text; the arithmetic the webhook needs — sums over
//! containers, comparison, rounding up to whole CPUs and MiB, the canonical text of a sum — is
//! done here on an exact integer count of nano-units, as apimachinery's `resource.Quantity` does
//! (it, too, keeps at most nano precision, rounding finer input away from zero when parsing).
//! A value beyond ±1.7·10²⁹ units is refused rather than approximated.

use std::fmt;

/// Longest quantity text accepted (apimachinery has no limit; no real quantity comes close).
pub const MAX_QUANTITY_LEN: usize = 64;

const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Most significant digits kept while parsing; the rest only decide rounding.
const MAX_DIGITS: usize = 36;

/// A resource quantity as an exact number of nano-units (10⁻⁹).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Quantity {
    nanos: i128,
}

/// Why a quantity's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the quantity grammar (`<sign><digits>.<digits><suffix>`).
    #[error("{0:?} is not a Kubernetes quantity (expected e.g. \"500m\", \"2\", \"4Gi\", \"1e3\")")]
    Syntax(String),
    /// Parsed, but too large to be represented exactly.
    #[error("quantity {0:?} is out of range")]
    OutOfRange(String),
    /// A sum of quantities overflowed.
    #[error("the sum of the quantities is out of range")]
    SumOutOfRange,
}

fn clipped(text: &str) -> String {
    let mut s: String = text.chars().take(MAX_QUANTITY_LEN).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    /// A whole number of units.
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANOS_PER_UNIT,
        }
    }

    /// The value in nano-units.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// Parses quantity text as apimachinery's `ParseQuantity` does (surrounding whitespace is
    /// ignored, as in its JSON decoding).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(clipped(text));
        let s = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if s.is_empty() || s.len() > MAX_QUANTITY_LEN {
            return Err(syntax());
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let negative = match bytes[0] {
            b'-' => {
                i = 1;
                true
            }
            b'+' => {
                i = 1;
                false
            }
            _ => false,
        };
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &s[int_start..i];
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &s[frac_start..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax());
        }
        let (exp10, bin) = suffix(&s[i..]).ok_or_else(syntax)?;
        let mut digits = String::with_capacity(int_digits.len() + frac_digits.len());
        digits.push_str(int_digits);
        digits.push_str(frac_digits);
        // Value = digits × 10^(exp10 − |frac|) × 2^bin units = … × 10^(t) nano-units.
        let t = exp10 - frac_digits.len() as i64 + 9;
        let magnitude =
            nanos_of(&digits, t, bin).ok_or_else(|| QuantityError::OutOfRange(clipped(text)))?;
        let nanos =
            i128::try_from(magnitude).map_err(|_| QuantityError::OutOfRange(clipped(text)))?;
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// `self + other`, refusing overflow.
    pub fn checked_add(self, other: Quantity) -> Result<Quantity, QuantityError> {
        self.nanos
            .checked_add(other.nanos)
            .map(|nanos| Quantity { nanos })
            .ok_or(QuantityError::SumOutOfRange)
    }

    /// Whether the value is zero.
    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Whether the value is above zero.
    pub fn is_positive(self) -> bool {
        self.nanos > 0
    }

    /// The value rounded up to a whole number of units (apimachinery's `Value()`), or `None`
    /// beyond `i64`.
    pub fn ceil_units(self) -> Option<i64> {
        i64::try_from(ceil_div(self.nanos, NANOS_PER_UNIT)).ok()
    }

    /// A byte quantity rounded up to whole bytes, then up to whole MiB (the cloud provider
    /// helpers' `RoundUpToMiB`), or `None` beyond `i64`.
    pub fn ceil_mib(self) -> Option<i64> {
        let bytes = self.ceil_units()?;
        Some(ceil_div(i128::from(bytes), 1 << 20) as i64)
    }

    /// The canonical text of a decimal-SI quantity, as apimachinery's `String()` writes a
    /// quantity whose format is `DecimalSI`: the smallest mantissa with an exponent that is a
    /// multiple of three, then its suffix (`"1"`, `"1500m"`, `"2k"`).
    pub fn to_decimal_si(self) -> String {
        if self.nanos == 0 {
            return "0".to_owned();
        }
        let mut mantissa = self.nanos;
        let mut exponent: i32 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        // At most two steps down; the mantissa stays below 10^38 × 100 only because it lost
        // at least as many trailing zeros above, so this cannot overflow.
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }
        let suffix = match exponent {
            -9 => "n".to_owned(),
            -6 => "u".to_owned(),
            -3 => "m".to_owned(),
            0 => String::new(),
            3 => "k".to_owned(),
            6 => "M".to_owned(),
            9 => "G".to_owned(),
            12 => "T".to_owned(),
            15 => "P".to_owned(),
            18 => "E".to_owned(),
            e => format!("e{e}"),
        };
        format!("{mantissa}{suffix}")
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_si())
    }
}

/// Rounds toward +∞ (apimachinery rounds a quantity "up" this way when scaling).
fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

/// The suffix's decimal exponent and binary exponent, or `None` when it is not one.
fn suffix(s: &str) -> Option<(i64, u32)> {
    let decimal = |e: i64| Some((e, 0));
    let binary = |b: u32| Some((0, b));
    match s {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let rest = s.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            rest.parse::<i64>().ok().map(|e| (e, 0))
        }
    }
}

/// |digits| × 10^t × 2^bin rounded away from zero to an integer, or `None` on overflow.
fn nanos_of(digits: &str, mut t: i64, bin: u32) -> Option<u128> {
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let (kept, dropped) = digits.split_at(digits.len().min(MAX_DIGITS));
    let sticky = dropped.bytes().any(|b| b != b'0');
    t += dropped.len() as i64;
    let d: u128 = kept.parse().ok()?;
    let n = d.checked_mul(1u128 << bin)?;
    if t >= 0 {
        if sticky {
            // More than 36 significant digits above nano precision: far out of range anyway.
            return None;
        }
        let scale = 10u128.checked_pow(u32::try_from(t).ok()?)?;
        return n.checked_mul(scale);
    }
    let Some(p) = u32::try_from(-t).ok().and_then(|e| 10u128.checked_pow(e)) else {
        // Smaller than one nano-unit but not zero: rounds up to one.
        return Some(1);
    };
    let q = n / p;
    Some(if n % p != 0 || sticky { q + 1 } else { q })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(q("1").nanos(), 1_000_000_000);
        assert_eq!(q("500m").nanos(), 500_000_000);
        assert_eq!(q("0.5").nanos(), 500_000_000);
        assert_eq!(q(".5").nanos(), 500_000_000);
        assert_eq!(q("5.").nanos(), 5_000_000_000);
        assert_eq!(q("+2").nanos(), 2_000_000_000);
        assert_eq!(q("-2").nanos(), -2_000_000_000);
        assert_eq!(q("4Gi").ceil_units(), Some(4 << 30));
        assert_eq!(q("1.5Ki").ceil_units(), Some(1536));
        assert_eq!(q("2e3").ceil_units(), Some(2000));
        assert_eq!(q("2E3").ceil_units(), Some(2000));
        assert_eq!(q("1E").ceil_units(), Some(1_000_000_000_000_000_000));
        assert_eq!(q("1e-3").nanos(), 1_000_000);
        assert_eq!(q("1n").nanos(), 1);
        assert_eq!(q("1u").nanos(), 1000);
        assert_eq!(q(" 3 ").nanos(), 3_000_000_000);
        assert_eq!(q("000").nanos(), 0);
    }

    #[test]
    fn finer_than_nano_rounds_away_from_zero() {
        assert_eq!(q("0.1n").nanos(), 1);
        assert_eq!(q("1.0000000001").nanos(), 1_000_000_001);
        assert_eq!(q("-0.1n").nanos(), -1);
        assert_eq!(q("1e-40").nanos(), 1);
        assert_eq!(
            q("0.0000000000000000000000000000000000000000001").nanos(),
            1
        );
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in [
            "", " ", "m", ".", "-", "+", "1x", "1 m", "1mi", "1KI", "1e", "1e+", "1e1.5", "1..2",
            "--1", "1Gi1", "0x10", "1e99999", "١",
        ] {
            assert!(
                matches!(Quantity::parse(bad), Err(QuantityError::Syntax(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn refuses_out_of_range_instead_of_wrapping() {
        for big in [
            "1e30",
            "999999999999999999999999999999999999999",
            "200000000000000000000Ei",
        ] {
            assert!(
                matches!(Quantity::parse(big), Err(QuantityError::OutOfRange(_))),
                "{big:?}"
            );
        }
        let max = Quantity { nanos: i128::MAX };
        assert_eq!(max.checked_add(q("1n")), Err(QuantityError::SumOutOfRange));
        assert_eq!(max.ceil_units(), None);
    }

    #[test]
    fn long_text_is_refused_and_clipped_in_the_error() {
        let long = "1".repeat(10_000);
        let err = Quantity::parse(&long).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn rounds_up_like_apimachinery() {
        assert_eq!(q("200m").ceil_units(), Some(1));
        assert_eq!(q("1500m").ceil_units(), Some(2));
        assert_eq!(q("1").ceil_units(), Some(1));
        assert_eq!(q("-1500m").ceil_units(), Some(-1));
        assert_eq!(q("4Gi").ceil_mib(), Some(4096));
        assert_eq!(q("1").ceil_mib(), Some(1));
        assert_eq!(q("1Mi").ceil_mib(), Some(1));
        assert_eq!(q("1048577").ceil_mib(), Some(2));
        assert_eq!(q("1G").ceil_mib(), Some(954));
        assert_eq!(q("0.5").ceil_mib(), Some(1));
    }

    #[test]
    fn canonical_decimal_si_text() {
        for (input, text) in [
            ("1", "1"),
            ("2", "2"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1500m", "1500m"),
            ("2000m", "2"),
            ("0.5", "500m"),
            ("0.1n", "1n"),
            ("10u", "10u"),
            ("1Ki", "1024"),
            ("1e21", "1e21"),
            ("0", "0"),
            ("-3", "-3"),
        ] {
            assert_eq!(q(input).to_decimal_si(), text, "{input}");
        }
    }
}
