//! The CPU path: plain f32 reference ops, multi-threaded with rayon.

pub mod attention;
pub mod ops;
