//! Stop strings over streamed text.
//!
//! The text is cut at the stop string that is *completed first* as the text
//! streams in (the earliest end; among stops ending at the same byte, the longest,
//! so the cut is the earliest), and the stop string itself is not emitted (OpenAI's
//! semantics). That point depends only on the text, never on how it was split into
//! deltas, and generation can end the moment a stop appears. Text that may be the
//! start of a stop string is held back until the next delta tells.
//!
//! Each stop string keeps a Knuth–Morris–Pratt state (how long a prefix of it the
//! text currently ends with), so a delta costs O(delta length × stop count) and the
//! held-back text is never longer than the longest stop. Matching is byte-wise on
//! UTF-8, which can only match at character boundaries, so no character is split.

use super::SamplingError;

/// Most stop strings one request may give.
pub const MAX_STOPS: usize = 16;

/// Longest stop string, in UTF-8 bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Finds stop strings in one sequence's streamed text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<Stop>,
    /// Text received but not yet emitted: a suffix that is a proper prefix of a stop.
    held: String,
    /// A stop string matched; everything after it is discarded.
    stopped: bool,
}

#[derive(Debug, Clone)]
struct Stop {
    bytes: Box<[u8]>,
    /// KMP failure function: `fail[i]` is the length of the longest proper prefix of
    /// `bytes[..=i]` that is also its suffix.
    fail: Box<[u16]>,
    /// Length of the longest prefix of `bytes` that the text so far ends with.
    state: usize,
}

impl Stop {
    fn new(s: &str) -> Stop {
        let bytes: Box<[u8]> = s.as_bytes().into();
        let mut fail = vec![0u16; bytes.len()].into_boxed_slice();
        let mut k = 0usize;
        for i in 1..bytes.len() {
            while k > 0 && bytes[i] != bytes[k] {
                k = usize::from(fail[k - 1]);
            }
            if bytes[i] == bytes[k] {
                k += 1;
            }
            // k < MAX_STOP_BYTES, which fits in u16.
            fail[i] = k as u16;
        }
        Stop {
            bytes,
            fail,
            state: 0,
        }
    }

    /// Advances over one byte; true when the whole stop string has just been seen.
    #[inline]
    fn step(&mut self, b: u8) -> bool {
        let mut k = self.state;
        while k > 0 && self.bytes[k] != b {
            k = usize::from(self.fail[k - 1]);
        }
        if self.bytes[k] == b {
            k += 1;
        }
        if k == self.bytes.len() {
            self.state = usize::from(self.fail[k - 1]);
            true
        } else {
            self.state = k;
            false
        }
    }
}

impl StopMatcher {
    /// A matcher for `stops`. Refuses an empty stop string, more than [`MAX_STOPS`]
    /// of them, or one longer than [`MAX_STOP_BYTES`]; duplicates are harmless.
    pub fn new(stops: &[String]) -> Result<StopMatcher, SamplingError> {
        if stops.len() > MAX_STOPS {
            return Err(SamplingError::TooManyStops {
                count: stops.len(),
                max: MAX_STOPS,
            });
        }
        for (index, s) in stops.iter().enumerate() {
            if s.is_empty() {
                return Err(SamplingError::EmptyStop { index });
            }
            if s.len() > MAX_STOP_BYTES {
                return Err(SamplingError::StopTooLong {
                    index,
                    len: s.len(),
                    max: MAX_STOP_BYTES,
                });
            }
        }
        let held = String::with_capacity(stops.iter().map(String::len).max().unwrap_or(0));
        Ok(StopMatcher {
            stops: stops.iter().map(|s| Stop::new(s)).collect(),
            held,
            stopped: false,
        })
    }

    /// A matcher with no stop strings: text passes straight through.
    pub fn empty() -> StopMatcher {
        StopMatcher {
            stops: Vec::new(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has matched; from then on the sequence is finished.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next text delta. Returns the text that is safe to emit now and
    /// whether a stop string matched; if so the text ends just before the stop
    /// string, everything after is discarded, and later calls return `("", true)`.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (delta.to_owned(), false);
        }
        for (i, &b) in delta.as_bytes().iter().enumerate() {
            // Every stop steps over every byte, so that all states stay current.
            let mut longest = 0;
            for stop in &mut self.stops {
                if stop.step(b) {
                    longest = longest.max(stop.bytes.len());
                }
            }
            if longest > 0 {
                // A stop's match never reaches back past the held text: it holds
                // the longest partial match there was.
                let start = (self.held.len() + i + 1).saturating_sub(longest);
                let out = self.split_off_front(delta, start);
                self.held.clear();
                self.stopped = true;
                return (out, true);
            }
        }
        // Keep back the longest suffix that is still a prefix of some stop.
        let hold = self.stops.iter().map(|s| s.state).max().unwrap_or(0);
        let total = self.held.len() + delta.len();
        (
            self.split_off_front(delta, total.saturating_sub(hold)),
            false,
        )
    }

    /// End of generation: releases the held-back text (none after a stop matched).
    pub fn flush(&mut self) -> String {
        for stop in &mut self.stops {
            stop.state = 0;
        }
        std::mem::take(&mut self.held)
    }

    /// End of generation with one last delta (the detokenizer's tail): feeds it,
    /// then releases what is held. A stop string completed by `last` still cuts
    /// the text there.
    pub fn flush_after(&mut self, last: impl AsRef<str>) -> String {
        let (mut text, _) = self.push(last.as_ref());
        text.push_str(&self.flush());
        text
    }

    /// Of `held + delta`, returns the first `cut` bytes and keeps the rest held.
    fn split_off_front(&mut self, delta: &str, cut: usize) -> String {
        let held_len = self.held.len();
        if cut <= held_len {
            let cut = floor_char_boundary(&self.held, cut);
            let out = self.held[..cut].to_owned();
            self.held.drain(..cut);
            self.held.push_str(delta);
            out
        } else {
            let in_delta = floor_char_boundary(delta, cut - held_len);
            let mut out = String::with_capacity(held_len + in_delta);
            out.push_str(&self.held);
            out.push_str(&delta[..in_delta]);
            self.held.clear();
            self.held.push_str(&delta[in_delta..]);
            out
        }
    }
}

/// The largest char boundary at or below `i`. A cut computed from a match is
/// always a boundary already (a UTF-8 string starts with a non-continuation byte),
/// so this only guards against a bug turning into a panic.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
#[path = "stop_tests.rs"]
mod tests;
