//! Application state: values the service gives the agent ([`AgentOptions::state`]) and jobs
//! take in their constructor or read from their context ([`JobContext::state`]).
//!
//! The values live in a map keyed by type, as axum's `Extensions` and apalis' `Data<T>` do:
//! one value per type, so a service with two pools of one type wraps them in newtypes.
//!
//! [`AgentOptions::state`]: crate::AgentOptions::state
//! [`JobContext::state`]: crate::JobContext::state

use std::any::{TypeId, type_name};
use std::fmt;
use std::sync::Arc;

use axum::http::Extensions;

/// The values given to the agent, one per type. Cheap to clone: every run's context holds a
/// clone, which must not allocate, and is one reference count (both worker threads update it
/// on every run).
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct States(Arc<Given>);

#[derive(Clone, Default)]
struct Given {
    map: Extensions,
    /// What was given, for the start-up check of constructors and for `Debug`.
    given: Vec<Need>,
}

impl States {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        let inner = Arc::make_mut(&mut self.0);
        if inner.map.insert(value).is_none() {
            inner.given.push(Need::of::<T>());
        }
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.map.get::<T>()
    }

    /// The first of `needs` that was not given.
    pub(crate) fn missing(&self, needs: &[Need]) -> Option<Need> {
        needs
            .iter()
            .find(|need| !self.0.given.iter().any(|g| g.id == need.id))
            .copied()
    }

    /// The type names given, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.given.iter().map(|g| g.name)
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values may hold secrets (a pool's connection string): only their types show.
        f.debug_list().entries(self.names()).finish()
    }
}

/// A state type a job's constructor takes.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Need {
    id: TypeId,
    name: &'static str,
}

impl Need {
    fn of<T: 'static>() -> Self {
        Self {
            id: TypeId::of::<T>(),
            name: type_name::<T>(),
        }
    }

    /// The type's name, as the compiler spells it.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }
}

/// A constructor's state type was not given to the agent.
#[doc(hidden)]
#[derive(Debug)]
pub struct MissingState(pub(crate) Need);

impl MissingState {
    pub(crate) fn of<T: 'static>() -> Self {
        Self(Need::of::<T>())
    }
}

impl fmt::Display for MissingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no state of type `{}` was given to the agent; add it with `AgentOptions::state(value)`",
            self.0.name
        )
    }
}

fn take<T: Clone + Send + Sync + 'static>(states: &States) -> Result<T, MissingState> {
    states.get::<T>().cloned().ok_or_else(MissingState::of::<T>)
}

/// A function that builds a job from the agent's state: `fn() -> Job`, or a function whose
/// parameters are state values taken by value, `fn(Pool, Client) -> Job` (up to six).
/// `#[job_agent(constructor = "...")]` names one.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot build a job from the agent's state",
    label = "a job constructor takes no parameters or up to six state values, each by value, and returns the job",
    note = "each parameter's type must be `Clone + Send + Sync + 'static` and given to the agent with `AgentOptions::state(value)`; take `Arc<T>` for a value that is not `Clone`, not `&T`"
)]
pub trait Constructor<Args, J> {
    /// The state types the constructor takes.
    fn needs() -> Vec<Need>;
    /// Builds the job from the agent's state.
    fn construct(&self, states: &States) -> Result<J, MissingState>;
}

impl<F, J> Constructor<(), J> for F
where
    F: Fn() -> J,
{
    fn needs() -> Vec<Need> {
        Vec::new()
    }

    fn construct(&self, _: &States) -> Result<J, MissingState> {
        Ok(self())
    }
}

macro_rules! constructor_with {
    ($($arg:ident),+) => {
        impl<F, J, $($arg),+> Constructor<($($arg,)+), J> for F
        where
            F: Fn($($arg),+) -> J,
            $($arg: Clone + Send + Sync + 'static),+
        {
            fn needs() -> Vec<Need> {
                vec![$(Need::of::<$arg>()),+]
            }

            fn construct(&self, states: &States) -> Result<J, MissingState> {
                Ok(self($(take::<$arg>(states)?),+))
            }
        }
    };
}

constructor_with!(A);
constructor_with!(A, B);
constructor_with!(A, B, C);
constructor_with!(A, B, C, D);
constructor_with!(A, B, C, D, E);
constructor_with!(A, B, C, D, E, G);

/// The state types a constructor takes (generated code names the function once).
#[doc(hidden)]
pub fn needs_of<J, Args, F: Constructor<Args, J>>(_: &F) -> Vec<Need> {
    F::needs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Pool(u32);
    #[derive(Clone)]
    struct Client(&'static str);

    struct Job(u32, &'static str);

    fn new(pool: Pool, client: Client) -> Job {
        Job(pool.0, client.0)
    }

    #[test]
    fn a_constructor_takes_what_was_given_by_type() {
        let mut states = States::default();
        states.insert(Client("c"));
        states.insert(Pool(7));
        let job = new.construct(&states).expect("both given");
        assert_eq!((job.0, job.1), (7, "c"));
        assert!(states.missing(&needs_of(&new)).is_none());
        assert_eq!(
            format!("{states:?}"),
            format!("[{:?}, {:?}]", type_name::<Client>(), type_name::<Pool>())
        );
    }

    #[test]
    fn a_missing_value_is_named_with_the_fix() {
        let mut states = States::default();
        states.insert(Pool(7));
        let missing = states.missing(&needs_of(&new)).expect("client missing");
        assert_eq!(missing.name(), type_name::<Client>());
        let err = new.construct(&states).err().expect("client missing");
        assert!(err.to_string().contains("Client"), "{err}");
        assert!(err.to_string().contains("AgentOptions::state"), "{err}");
    }

    #[test]
    fn a_second_value_of_one_type_replaces_the_first() {
        let mut states = States::default();
        states.insert(Pool(1));
        states.insert(Pool(2));
        assert_eq!(states.get::<Pool>().map(|p| p.0), Some(2));
        assert_eq!(states.names().count(), 1);
    }
}
