//! Tests of the receive ring against the real kernel (see mod.rs).
