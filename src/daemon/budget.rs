//! The daemon's census pacing, as tick.rs names it: the shares and the rule
//! are pure judgement and live in judge/budget.rs.

pub(super) use crate::judge::budget::{CENSUS_SHARE, Spent};
