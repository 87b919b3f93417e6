//! The read model both front ends share. LDAP (`cairn-ldap`) and the
//! host-facing gRPC services (`cairn-boot`) are siblings above it that only
//! translate: what a host is, which site an address belongs to, which
//! nodes are closest, a host's effective configuration and where each
//! value comes from, and how an unknown host is placed by the deploy rules
//! are all decided here.
//!
//! Layout: [`fleet`] reads sites, links, nodes and hosts from the directory
//! and computes a host's effective configuration (via
//! `cairn_core::inherit`); [`register`] turns a deploy rule's match into
//! the write that creates the host; [`model`] caches both per directory
//! generation and runs registrations through the node's write path;
//! [`tokens`] says which part of the inventory a host's enrollment token
//! opens; [`throttle`] slows repeated failures (binds, tokens);
//! [`error`] says what can go wrong, for the front ends to translate.

pub mod error;
pub mod fleet;
pub mod model;
pub mod register;
pub mod throttle;
pub mod tokens;

pub use error::FleetError;
pub use model::{Model, Unmapped};
