//! The coordinator's gRPC services. Handlers stay thin: the layer has already
//! authorized the call; they convert, delegate, and convert back.

pub mod admin;
pub mod enrollment;
pub mod node;
