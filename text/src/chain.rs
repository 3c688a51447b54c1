//! An error and its causes on one line.

use std::error::Error;

/// `error` and its sources, `: `-separated: `failed to start: cannot open x: No such file`.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    push_causes(&mut text, error.source());
    text
}

/// Appends `: <cause>` to `text` for `cause` and each of its own sources in turn. For an error
/// whose Display already shows its direct source, pass that source's source.
pub fn push_causes(text: &mut String, cause: Option<&dyn Error>) {
    let mut cause = cause;
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Link(&'static str, Option<Box<Link>>);

    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Link {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn every_cause_in_order() {
        let e = Link(
            "failed to start",
            Some(Box::new(Link(
                "cannot open x",
                Some(Box::new(Link("EACCES", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "failed to start: cannot open x: EACCES");
        assert_eq!(error_chain(&Link("alone", None)), "alone");
    }

    #[test]
    fn causes_from_a_given_source() {
        let e = Link(
            "outer",
            Some(Box::new(Link(
                "middle",
                Some(Box::new(Link("inner", None))),
            ))),
        );
        let mut text = String::from("outer: middle");
        push_causes(&mut text, e.source().and_then(Error::source));
        assert_eq!(text, "outer: middle: inner");
        let mut none = String::from("x");
        push_causes(&mut none, None);
        assert_eq!(none, "x");
    }
}
