//! Standard output whose every write is checked.
//!
//! `println!` panics when standard output is a closed pipe (`scratchllm model info | head -1`) or a
//! full device (`> /dev/full`): "failed printing to stdout", exit 101. Results go through these
//! helpers instead, which return a [`WriteError`] naming standard output; `main` ends quietly with
//! status 0 on a closed pipe, as `cat` does ([`is_closed_pipe`]), and reports any other write error.
//!
//! Standard output is line-buffered, so a failed line is reported by the write of that line; text
//! without a newline (a streamed answer) is flushed by [`text`] as it is written.
use std::fmt;
use std::io::{self, Write};

/// Writing to standard output failed (the cause says why: a closed pipe, a full disk...).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct WriteError {
    #[source]
    source: io::Error,
}

impl WriteError {
    /// The reader of a pipe went away: not a failure of ours (`| head`).
    pub fn is_closed_pipe(&self) -> bool {
        self.source.kind() == io::ErrorKind::BrokenPipe
    }
}

impl From<io::Error> for WriteError {
    fn from(source: io::Error) -> Self {
        WriteError { source }
    }
}

/// Writes one line (`outln!` formats it).
pub fn line(args: fmt::Arguments) -> Result<(), WriteError> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes text without a newline and flushes it, so that it is seen at once (streamed tokens).
pub fn text(text: &str) -> Result<(), WriteError> {
    bytes(text.as_bytes())
}

/// Writes bytes (not necessarily UTF-8: detokenized ids may end inside a character) and flushes.
pub fn bytes(bytes: &[u8]) -> Result<(), WriteError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Flushes what is buffered; `main` calls it after a command, so a last line without a newline
/// cannot fail unseen.
pub fn flush() -> Result<(), WriteError> {
    Ok(io::stdout().lock().flush()?)
}

/// Whether `e` is (or was caused by) a write to a closed pipe: such a run ends with status 0.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<WriteError>()
            .is_some_and(WriteError::is_closed_pipe)
    }) || e
        .downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

/// `println!` that returns a [`WriteError`] instead of panicking: `outln!("{x}")?;`.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let pipe = WriteError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        let e = anyhow::Error::new(pipe).context("printing the model's size");
        assert!(is_closed_pipe(&e));
        let full = WriteError::from(io::Error::from_raw_os_error(28)); // ENOSPC
        let e = anyhow::Error::new(full);
        assert!(!is_closed_pipe(&e));
        assert_eq!(e.to_string(), "cannot write to standard output");
        let cause = e.chain().nth(1).map(|c| c.to_string()).unwrap_or_default();
        assert!(cause.contains("No space left on device"), "{cause}");
    }
}
