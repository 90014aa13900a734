use jobagent::job_agent;

#[job_agent]
trait Cleanup {
    fn cleanup(&self);
}

fn main() {}
