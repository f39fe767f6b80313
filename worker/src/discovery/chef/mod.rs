//! Chef discovery: a signed node search against a Chef Infra Server.

pub mod query;
pub mod sign;
