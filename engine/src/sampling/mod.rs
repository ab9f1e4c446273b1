//! Token sampling and stop strings: the per-sequence decision of which token comes
//! next from a row of logits, and where the streamed text ends.
//!
//! Invariants: sampling is a pure function of (parameters, seed, logits so far), with
//! exactly one random draw per [`Sampler::sample`] call, so batching, preemption or
//! the machine never shift a request's stream; the sampler allocates nothing per
//! token; nothing here panics on any logits or text. Sans-IO; depends on nothing
//! else in the engine.
//!
//! `sampler.rs` holds temperature, the draw's random stream and the log
//! probabilities; `filter.rs` top-k, top-p and min-p; `exp.rs` the portable `exp`
//! they share; `stop.rs` the stop strings.

mod exp;
mod filter;
mod sampler;
pub mod stop;

pub use sampler::Sampler;
pub use stop::{MAX_STOP_BYTES, MAX_STOPS, StopMatcher};

/// Largest temperature a request may ask for (OpenAI's bound).
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Errors of the sampling parameters and stop strings. Each one is the caller's
/// fault and maps to `INVALID_ARGUMENT` / HTTP 400 at the edge; none is retryable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A numeric sampling parameter is NaN, infinite or out of its range.
    #[error("invalid {name}: {value} (must be a finite number in {range})")]
    OutOfRange {
        /// The parameter's name as the API spells it (`temperature`, `top_p`, `min_p`).
        name: &'static str,
        /// The value that was given.
        value: f32,
        /// The accepted range, e.g. `[0, 2]`.
        range: &'static str,
    },
    /// A stop string is empty.
    #[error("invalid stop: stop string {index} is empty")]
    EmptyStop {
        /// Position of the stop string in the request's list.
        index: usize,
    },
    /// More stop strings than [`MAX_STOPS`].
    #[error("invalid stop: {count} stop strings given, at most {max} allowed")]
    TooManyStops {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A stop string longer than [`MAX_STOP_BYTES`].
    #[error("invalid stop: stop string {index} is {len} bytes long, at most {max} bytes allowed")]
    StopTooLong {
        /// Position of the stop string in the request's list.
        index: usize,
        /// Its length in bytes (UTF-8).
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// How one sequence picks its tokens. The default is greedy decoding.
///
/// Filters apply in the order temperature, top-k, top-p, min-p (as vLLM and
/// Hugging Face `transformers` do; llama.cpp applies temperature last, which changes
/// what top-p and min-p keep but not top-k).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 means off.
    pub top_k: u32,
    /// Nucleus: keep the smallest set of most likely tokens whose probability adds up
    /// to at least `top_p`; 0 or >= 1 means off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's;
    /// 0 means off.
    pub min_p: f32,
    /// Seed of the sequence's random stream; `None` takes the engine's per-request
    /// seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks every parameter's range; the error names the first bad parameter and
    /// its value.
    pub fn validate(&self) -> Result<(), SamplingError> {
        check_range("temperature", self.temperature, MAX_TEMPERATURE, "[0, 2]")?;
        check_range("top_p", self.top_p, 1.0, "[0, 1]")?;
        check_range("min_p", self.min_p, 1.0, "[0, 1]")?;
        Ok(())
    }

    /// Whether these parameters decode greedily (no random choice at all).
    pub fn is_greedy(&self) -> bool {
        // Mirrors the sampler: anything that is not a positive finite temperature
        // decodes greedily, so an unvalidated NaN cannot reach the softmax.
        !(self.temperature.is_finite() && self.temperature > 0.0) || self.top_k == 1
    }
}

fn check_range(
    name: &'static str,
    value: f32,
    max: f32,
    range: &'static str,
) -> Result<(), SamplingError> {
    // `contains` is false for NaN, so NaN and the infinities are refused here too.
    if (0.0..=max).contains(&value) {
        Ok(())
    } else {
        Err(SamplingError::OutOfRange { name, value, range })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_greedy_and_valid() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.0);
        assert!(p.is_greedy());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn validate_accepts_the_bounds() {
        for (t, tp, mp) in [(0.0, 0.0, 0.0), (2.0, 1.0, 1.0), (0.7, 0.95, 0.05)] {
            let p = SamplingParams {
                temperature: t,
                top_p: tp,
                min_p: mp,
                ..Default::default()
            };
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
    }

    #[test]
    fn validate_names_the_parameter_and_value() {
        let cases = [
            (
                SamplingParams {
                    temperature: 2.5,
                    ..Default::default()
                },
                "invalid temperature: 2.5 (must be a finite number in [0, 2])",
            ),
            (
                SamplingParams {
                    temperature: -0.1,
                    ..Default::default()
                },
                "invalid temperature: -0.1 (must be a finite number in [0, 2])",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "invalid temperature: NaN (must be a finite number in [0, 2])",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
                "invalid temperature: inf (must be a finite number in [0, 2])",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "invalid top_p: 1.5 (must be a finite number in [0, 1])",
            ),
            (
                SamplingParams {
                    top_p: f32::NAN,
                    ..Default::default()
                },
                "invalid top_p: NaN (must be a finite number in [0, 1])",
            ),
            (
                SamplingParams {
                    min_p: -1.0,
                    ..Default::default()
                },
                "invalid min_p: -1 (must be a finite number in [0, 1])",
            ),
            (
                SamplingParams {
                    min_p: f32::NAN,
                    ..Default::default()
                },
                "invalid min_p: NaN (must be a finite number in [0, 1])",
            ),
        ];
        for (p, msg) in cases {
            let err = p.validate().expect_err("must be refused");
            assert_eq!(err.to_string(), msg);
        }
    }
}
