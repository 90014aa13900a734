use agent_sdk::job_agent;

#[job_agent]
fn cleanup() {}

fn main() {
    cleanup();
}
