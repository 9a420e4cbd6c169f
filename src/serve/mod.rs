//! Running a model, compiled or not: perplexity / KL / top-1 (`eval`), zero-shot tasks with
//! lm-eval's conventions (`tasks`), generation (`generate`) and the serving benchmark (`bench`).

pub mod bench;
pub mod eval;
pub mod generate;
pub mod tasks;
