//! Talking to the center's dashboard API: creating jobs, and registering this agent's jobs.
