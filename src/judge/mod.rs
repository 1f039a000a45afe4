//! Pure judgement: from what was observed, the policy and the time (always
//! an input, never read here), the levels, forecasts, the plan, remedies,
//! the exhausted event and whether portd may write; assess.rs puts them
//! together into the one assessment every channel renders. No I/O: everything here
//! is unit-tested without root.
//!
//! May import `base`, `policy` and `observe`'s data types.

pub(crate) mod assess;
pub(crate) mod authority;
pub(crate) mod budget;
pub(crate) mod exhausted;
pub(crate) mod fastpath;
pub(crate) mod forecast;
pub(crate) mod level;
pub(crate) mod netns;
pub mod planner;
pub(crate) mod quiet;
pub(crate) mod remedy;
