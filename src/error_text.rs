//! How an error is shown to a person, the same from the CLI and from Python: the error and its
//! causes joined by ": ", leaving out a cause whose text the message already ends with (library
//! errors often print their source in their own message as well).

/// The message of `e` and of each of its causes, each once.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("read corpus")]
    struct Outer(#[source] crate::path_io::PathIoError);

    #[derive(Debug, thiserror::Error)]
    #[error("read corpus: {0}")]
    struct Repeats(#[source] crate::path_io::PathIoError);

    #[test]
    fn a_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = Outer(crate::path_io::PathIoError::new("/nope.jsonl", io()));
        assert_eq!(error_text(&e), "read corpus: /nope.jsonl: No such file or directory (os error 2)");
        // A message that already ends with its cause's text does not repeat it.
        let e = Repeats(crate::path_io::PathIoError::new("/nope.jsonl", io()));
        assert_eq!(error_text(&e), "read corpus: /nope.jsonl: No such file or directory (os error 2)");
    }
}
