use jobagent::job_agent;

#[job_agent]
fn cleanup() {}

fn main() {
    cleanup();
}
