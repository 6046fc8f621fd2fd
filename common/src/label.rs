//! Kubernetes label keys and values, checked as the apiserver checks them, so a bad
//! `--node-label` is refused at start with the rule it breaks rather than by a 422 later.

/// A label name or value part: at most 63 characters, alphanumerics with `-`, `_` or `.`
/// inside.
fn check_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err("must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
    }
}

/// A DNS subdomain: at most 253 characters, lowercase DNS labels joined by dots.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    let labels_ok = prefix.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    });
    if prefix.len() <= 253 && labels_ok {
        Ok(())
    } else {
        Err("has a prefix that is not a DNS subdomain (lowercase, digits, '-' and '.')")
    }
}

/// A label key: `[prefix/]name`.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            check_prefix(prefix)?;
            check_name(name)
        }
        None => check_name(key),
    }
}

/// A label value: empty, or a name.
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Ok(())
    } else {
        check_name(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_the_apiserver_rules() {
        for good in [
            "team",
            "eks.amazonaws.com/compute-type",
            "a.b-c/d_e.f",
            "x9",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-team",
            "team-",
            "Example.com/x",
            "a/b/c",
            "x/",
            "/x",
            &"k".repeat(64),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["", "fargate", "v1.2_3"] {
            assert!(check_value(good).is_ok(), "{good}");
        }
        for bad in ["has space", "-x", &"v".repeat(64)] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
    }
}
