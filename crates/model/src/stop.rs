//! Stop sequences over streamed text: text is released as soon as it cannot be the start of a stop
//! sequence, and the answer ends right before the first stop sequence, which is never sent.

/// Holds back what might still become a stop sequence.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        StopFilter {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what can be released, and whether a stop sequence was reached (then the
    /// text from the stop sequence on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // The longest end of the held text that begins some stop sequence stays held.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases whatever is still held (the stream ended without a stop sequence).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = f.push(p);
            out += &text;
            if stopped {
                return (out, true);
            }
        }
        out += &f.finish();
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_releases_false_starts() {
        assert_eq!(
            run(&["###"], &["Hello #", "# there"]),
            ("Hello ## there".into(), false)
        );
        assert_eq!(
            run(&["###"], &["Hello #", "#", "# x"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["\n\n", "END"], &["a\n", "b EN", "D!"]),
            ("a\nb ".into(), true)
        );
        assert_eq!(run(&[], &["abc"]), ("abc".into(), false));
        // Multi-byte characters: prefixes are cut at character boundaries.
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["éé"], &["xé", "y"]), ("xéy".into(), false));
    }

    #[test]
    fn nothing_is_released_that_could_still_stop() {
        let mut f = StopFilter::new(vec!["STOP".into()]);
        assert_eq!(f.push("go ST"), ("go ".into(), false));
        assert_eq!(f.push("O"), (String::new(), false));
        assert_eq!(f.push("x"), ("STOx".into(), false));
    }
}
