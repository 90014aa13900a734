//! Talking to the center's dashboard API: creating jobs ([`CenterClient`]), and registering
//! this agent's jobs as recurring jobs at start-up ([`AutoRegistrationOptions`],
//! [`Agent::start_auto_registration`](crate::Agent::start_auto_registration)).
//!
//! Behind the default feature `center`; without it the library has no HTTP client.

mod client;
mod register;

pub use client::{CenterClient, CenterError, DingTalk, HttpJobRequest};
pub use register::{
    AutoRegistrationOptions, DEFAULT_REGISTER_RETRIES, JobRegistrationResult, RegistrationOutcome,
    RegistrationReport, auto_register, spawn_auto_register,
};
