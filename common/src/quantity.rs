//! Exact conversion of Kubernetes resource quantities ("250m", "1.5", "512Mi", "1e3", "2G")
//! into integer millicores and bytes, rounding up, with no floating point on the way.

/// Why a quantity string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct InvalidQuantity(pub String);

/// A quantity as an exact fraction: `numerator / denominator` base units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exact {
    numerator: u128,
    denominator: u128,
}

fn parse_exact(text: &str) -> Result<Exact, InvalidQuantity> {
    let invalid = || InvalidQuantity(text.to_owned());
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') || s.is_empty() {
        return Err(invalid());
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(invalid());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err(invalid());
    }
    let mut numerator: u128 = digits.parse().map_err(|_| invalid())?;
    let mut denominator: u128 = 10u128.pow(frac_part.len() as u32);
    let (mult, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| invalid())?;
            if power.unsigned_abs() > 18 {
                return Err(invalid());
            }
            if power >= 0 {
                (10u128.pow(power as u32), 1)
            } else {
                (1, 10u128.pow(power.unsigned_abs()))
            }
        }
        _ => return Err(invalid()),
    };
    numerator = numerator.checked_mul(mult).ok_or_else(invalid)?;
    denominator = denominator.checked_mul(div).ok_or_else(invalid)?;
    Ok(Exact {
        numerator,
        denominator,
    })
}

fn ceil_div(numerator: u128, denominator: u128) -> u128 {
    numerator.div_ceil(denominator)
}

/// CPU in millicores, rounded up (`"100u"` is not a Kubernetes CPU form; `"1"` is 1000);
/// a value beyond `u64` saturates at `u64::MAX` rather than wrapping.
pub fn cpu_millis(text: &str) -> Result<u64, InvalidQuantity> {
    let exact = parse_exact(text)?;
    Ok(match exact.numerator.checked_mul(1000) {
        Some(millis) => saturate(ceil_div(millis, exact.denominator)),
        None => u64::MAX,
    })
}

/// Memory (or any byte quantity) in bytes, rounded up; saturates at `u64::MAX`.
pub fn bytes(text: &str) -> Result<u64, InvalidQuantity> {
    let exact = parse_exact(text)?;
    Ok(saturate(ceil_div(exact.numerator, exact.denominator)))
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// A plain count (pods, GPUs), rounded up.
pub fn count(text: &str) -> Result<u64, InvalidQuantity> {
    bytes(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_beyond_u64_saturate_instead_of_wrapping() {
        assert_eq!(cpu_millis("1E"), Ok(u64::MAX));
        assert_eq!(cpu_millis("999999999999999999999999999999"), Ok(u64::MAX));
        assert_eq!(bytes("100E"), Ok(u64::MAX));
        assert_eq!(bytes("16Ei"), Ok(u64::MAX));
        assert_eq!(bytes("15Ei"), Ok(15 << 60));
    }

    #[test]
    fn cpu_forms() {
        for (text, millis) in [
            ("1", 1000),
            ("250m", 250),
            ("0.5", 500),
            ("1.5", 1500),
            ("2", 2000),
            ("100m", 100),
            ("0.0001", 1),
            ("1e3", 1_000_000),
            ("1k", 1_000_000),
            (".5", 500),
        ] {
            assert_eq!(cpu_millis(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn memory_forms() {
        for (text, value) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("123Mi", 123 << 20),
            ("1.5Gi", 3 << 29),
            ("0.1", 1),
            ("500m", 1),
        ] {
            assert_eq!(bytes(text), Ok(value), "{text}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for text in ["", "-1", "abc", "1.2.3", "1Zi", "1e", "1e99", "m", "."] {
            assert!(cpu_millis(text).is_err(), "{text}");
        }
    }
}
