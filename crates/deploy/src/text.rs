//! The one way this crate checks a piece of text from outside (a profile
//! file, a deployment request) against a character set: every name, path and
//! URL that ends up in a seed, a domain definition or a remote command passes
//! here first, so the refusal always names the field and the character.

use overvisor_model::InvalidInput;

/// Checks `value` is non-empty, at most `max` characters, and made only of
/// characters `allowed` accepts; `rule` says in words what is allowed.
pub(crate) fn check_chars(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    rule: &str,
) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(InvalidInput::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|&c| !allowed(c)) {
        return Err(InvalidInput::new(
            field,
            format!("must not contain {c:?}: {rule}"),
        ));
    }
    Ok(())
}

/// Free text shown to people (titles, image names): anything printable.
pub(crate) fn check_printable(field: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    check_chars(
        field,
        value,
        max,
        |c| !c.is_control(),
        "control characters are not allowed",
    )?;
    if value.trim() != value {
        return Err(InvalidInput::new(
            field,
            "must not start or end with white space",
        ));
    }
    Ok(())
}

/// A lower-case identifier (`[a-z0-9._-]`, starting with a letter or digit):
/// profile names, package names, directory names on the virtio-win ISO.
pub(crate) fn check_identifier(field: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    check_chars(
        field,
        value,
        max,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'),
        "only lower-case letters, digits, '.', '_' and '-' are allowed",
    )?;
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(InvalidInput::new(
            field,
            "must start with a letter or a digit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_and_the_character() {
        let err = check_identifier("profile", "ubuntu;rm", 64).expect_err("refused");
        assert_eq!(err.field, "profile");
        assert!(err.message.contains("';'"), "{err}");
        assert!(check_identifier("p", "-x", 64).is_err());
        assert!(check_identifier("p", "", 64).is_err());
        assert!(check_identifier("p", "abcd", 3).is_err());
        assert!(check_printable("title", " x", 10).is_err());
        assert!(check_printable("title", "a\nb", 10).is_err());
        check_printable("title", "Ubuntu Server 24.04 LTS", 80).expect("valid");
    }
}
