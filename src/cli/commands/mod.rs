//! One thin function per command: build library types from the flags, call the library, print.

pub mod embed;
pub mod eval;
pub mod model;
pub mod select;
