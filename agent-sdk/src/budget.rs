//! The byte budget of running runs' parameters (`JOBAGENT_MAX_PARAM_BYTES_RUNNING`).
//!
//! Each run keeps its parameter for as long as it runs (`detail` shows it, the job reads
//! it). The run limits alone (10,000 a class, 20,000 in all) would let parameters of 1 MiB
//! each take tens of GiB; the budget bounds their sum. A run is charged its parameter's size
//! when it is admitted and gives it back when it ends ([`ParamCharge`] on drop).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::DispatchError;

/// The bytes of parameters the running runs hold, and their bound.
#[derive(Debug)]
pub(crate) struct ParamBudget {
    used: AtomicUsize,
    limit: usize,
}

/// One run's share of the [`ParamBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct ParamCharge {
    budget: Arc<ParamBudget>,
    bytes: usize,
}

impl ParamBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Charges `bytes`, or refuses when the running runs' parameters would exceed the budget.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Result<ParamCharge, DispatchError> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let after = used.saturating_add(bytes);
            if after > self.limit {
                return Err(DispatchError::Limit(format!(
                    "the parameters of the running jobs already take {used} bytes; this run's {bytes} bytes would exceed the budget of {} bytes (JOBAGENT_MAX_PARAM_BYTES_RUNNING); the run was not started",
                    self.limit
                )));
            }
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(ParamCharge {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// The bytes charged now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for ParamCharge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_gives_back_on_drop() {
        let budget = ParamBudget::new(100);
        let a = budget.charge(60).expect("fits");
        let e = budget.charge(41).expect_err("over").to_string();
        assert!(e.contains("JOBAGENT_MAX_PARAM_BYTES_RUNNING"), "{e}");
        let b = budget.charge(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.charge(100).is_ok());
    }
}
