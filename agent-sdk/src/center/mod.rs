//! Talking to the center's dashboard API: creating jobs, and registering this agent's jobs.

mod client;
mod register;

pub use client::{CenterClient, CenterError, DingTalk, HttpJobRequest};
pub use register::{
    AutoRegistrationOptions, DEFAULT_REGISTER_RETRIES, JobRegistrationResult, RegistrationOutcome,
    RegistrationReport, auto_register, spawn_auto_register,
};
