//! DNS steering's pure core: the ChangeBatch planner and what a provider answers.

pub mod planner;
pub mod provider;
