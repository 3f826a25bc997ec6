//! The Portcullis control plane.

pub mod cli;
