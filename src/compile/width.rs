//! The MLP width policy: named tiers, `--keep-ratio`, `--intermediate-size`, the rounding
//! multiple and the quality ceiling (`--max-kl` / `--max-ppl-ratio`, searched by `ceiling`) — what
//! `compile` prunes to and what `inspect` lists, from one place.

use crate::error::{Error, Result};
use serde::Serialize;

/// `--multiple-of` unless given.
pub const DEFAULT_MULTIPLE_OF: usize = 128;

/// Named widths, as fractions of 72 (on gemma-2-2b's 9216: 7936, 7296, 6528, 4864).
pub const TIERS: &[(&str, usize)] = &[
    ("default", 62),
    ("production", 57),
    ("throughput", 51),
    ("experimental", 38),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Width {
    Tier(String),
    KeepRatio(f64),
    Size(usize),
}

/// The chosen width and the rounding multiple actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedWidth {
    pub width: usize,
    pub multiple: usize,
}

/// Resolves the requested width for an MLP of `n` neurons. The multiple is clamped for small
/// models to the largest power of two ≤ n/16 (so a 96-wide test model rounds to 4, not 128).
pub fn resolve_width(n: usize, w: &Width, multiple_of: usize) -> Result<ResolvedWidth> {
    check_multiple_of(multiple_of)?;
    let cap = (n / 16).max(1);
    let pow2 = 1usize << (usize::BITS - 1 - cap.leading_zeros());
    let m = multiple_of.min(pow2);
    let target = match w {
        Width::Tier(t) => {
            let (_, num) = TIERS
                .iter()
                .find(|(name, _)| name == t)
                .ok_or_else(|| Error::Arg {
                    flag: "--tier",
                    msg: format!(
                        "unknown tier \"{t}\"; choose {}",
                        TIERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                })?;
            n as f64 * *num as f64 / 72.0
        }
        Width::KeepRatio(r) => {
            if !(*r > 0.0 && *r <= 1.0) {
                return Err(Error::Arg {
                    flag: "--keep-ratio",
                    msg: format!("{r} is outside (0, 1]"),
                });
            }
            n as f64 * r
        }
        Width::Size(s) => {
            if *s == 0 || *s > n {
                return Err(Error::Arg {
                    flag: "--intermediate-size",
                    msg: format!("{s} is outside 1..={n} (the model's intermediate_size)"),
                });
            }
            *s as f64
        }
    };
    let width = ((target / m as f64).round() as usize * m).min(n);
    if width == 0 {
        return Err(Error::Arg {
            flag: match w {
                Width::Tier(_) => "--tier",
                Width::KeepRatio(_) => "--keep-ratio",
                Width::Size(_) => "--intermediate-size",
            },
            msg: format!(
                "the width rounds to 0 at a multiple of {m} (MLP width {n}); keep more neurons"
            ),
        });
    }
    Ok(ResolvedWidth { width, multiple: m })
}

/// `--multiple-of` must be at least 1 (checked by `CompileOptions::validate` and here).
pub fn check_multiple_of(multiple_of: usize) -> Result<()> {
    if multiple_of == 0 {
        return Err(Error::Arg {
            flag: "--multiple-of",
            msg: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The quality ceiling a compile must stay within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ceiling {
    /// Mean KL(original ‖ compiled) per token.
    Kl(f64),
    /// PPL(compiled) / PPL(original).
    PplRatio(f64),
}

impl Ceiling {
    pub fn flag(self) -> &'static str {
        match self {
            Ceiling::Kl(_) => "--max-kl",
            Ceiling::PplRatio(_) => "--max-ppl-ratio",
        }
    }

    pub fn limit(self) -> f64 {
        match self {
            Ceiling::Kl(x) | Ceiling::PplRatio(x) => x,
        }
    }

    pub(crate) fn of(self, p: &Point) -> f64 {
        match self {
            Ceiling::Kl(_) => p.kl,
            Ceiling::PplRatio(_) => p.ppl_ratio,
        }
    }

    /// Refuses limits no compile could mean: KL ≤ 0 (only the original has KL 0) or a PPL ratio
    /// ≤ 1, and anything not finite.
    pub fn validate(self) -> Result<Ceiling> {
        let (x, floor) = match self {
            Ceiling::Kl(x) => (x, 0.0),
            Ceiling::PplRatio(x) => (x, 1.0),
        };
        if !(x.is_finite() && x > floor) {
            return Err(Error::Arg {
                flag: self.flag(),
                msg: format!(
                    "{x} is not a ceiling any pruned model can meet; give a number above {floor}"
                ),
            });
        }
        Ok(self)
    }
}

/// One measured width of the quality curve.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub width: usize,
    pub kl: f64,
    pub ppl_ratio: f64,
    pub top1_agree: f64,
    /// "measured": a complete compile in the run's mode, evaluated on the held-out slice.
    pub how: &'static str,
    pub within: bool,
}
