use jobagent::job_agent;

#[job_agent]
#[derive(Default)]
struct Forgotten;

fn main() {}
