//! How an error becomes the `message` of an API error body: its own text
//! and each of its causes once, joined by `": "`.
//!
//! Library errors print only what failed (their `Display` never repeats the
//! source), so whoever shows an error to a person prints the chain: the
//! service in its JSON bodies, the client SDK in its `Error::message`, the
//! CLI on stderr. This is the one place the chain is walked.

use std::error::Error;

/// An error and its sources, outermost first.
pub fn chain<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&current| current.source())
}

/// The error and every cause on one line: `"A: B: C"`.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    chain(error)
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pausing sb-1 failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once_outermost_first() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(one_line(&error), "pausing sb-1 failed: disk full");
        assert_eq!(chain(&error).count(), 2);
        assert_eq!(one_line(&std::io::Error::other("plain")), "plain");
    }
}
