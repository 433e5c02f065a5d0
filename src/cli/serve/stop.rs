//! Stop strings (`stop` in the OpenAI API) over streamed text: a stop string may span several
//! tokens, so text that could be the start of one is held back until the next piece says.

/// Cuts streamed text at the first stop string.
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released: the end of it may begin a stop string.
    held: String,
}

impl StopStrings {
    /// Empty strings never match and are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes the next piece of text; returns the text that may be released and whether a stop
    /// string ended it (nothing after the stop string's start is ever released).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(at) = first_stop {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // hold back the longest end of the text that some stop string starts with
        let keep = (1..=self.held.len())
            .rev()
            .filter(|&n| self.held.is_char_boundary(self.held.len() - n))
            .find(|&n| {
                let tail = &self.held[self.held.len() - n..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// The text still held when generation ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns the released text and whether a stop string ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = s.push(p);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_across_pieces_cuts_the_text() {
        assert_eq!(
            run(&["END"], &["one E", "N", "D two"]),
            ("one ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn a_false_start_is_released_and_nothing_is_lost() {
        assert_eq!(
            run(&["END"], &["E", "N", "x", "EN"]),
            ("ENxEN".into(), false)
        );
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("abE"), ("ab".into(), false));
        assert_eq!(s.push("Nd"), ("ENd".into(), false));
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        assert_eq!(run(&["éx"], &["aé", "éx"]), ("aé".into(), true));
        assert_eq!(run(&["x"], &["日本"]), ("日本".into(), false));
    }

    #[test]
    fn no_stop_strings_release_everything_at_once() {
        let mut s = StopStrings::new(vec![String::new()]);
        assert_eq!(s.push("abc"), ("abc".into(), false));
    }
}
