//! DNS steering's pure core (issue 4, in progress): the ChangeBatch planner and the provider
//! port. The zone actors, the Route53 provider and the audit log build on these.

pub mod planner;
pub mod provider;
pub mod rate;
