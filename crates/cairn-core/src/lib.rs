//! Cairn's directory model: pure functions over values, no sockets, no disks.
//!
//! Layout: [`dn`] parses and normalizes distinguished names (RFC 4514);
//! [`schema`] knows the attribute types and object classes and checks
//! entries against them; [`entry`] holds entries as they come in
//! ([`entry::Entry`]) and as the store accepts them ([`entry::ValidEntry`]);
//! [`filter`] evaluates search filters (RFC 4515) by each attribute's
//! syntax; [`modify`] applies LDAP modifications to an entry; [`ldif`] reads
//! and writes LDIF (RFC 2849); [`password`] hashes `userPassword` values;
//! [`inherit`] merges the settings of a host's site and ancestors into its
//! effective configuration; [`locate`] finds the site a host's address is
//! in and orders the other sites by site-link cost from it; [`rules`]
//! matches an unknown booting host against deploy rules to pick the
//! container it is created in; [`net`] holds the value rules the front
//! ends share (MAC addresses, host names, a content hash) and [`time`] the
//! clock and GeneralizedTime.
//!
//! Hosts authenticate with enrollment tokens ([`token`]); [`pxe`] reads
//! the file names network-booting hosts ask for.
//!
//! Who may do what: [`access`] evaluates access rules (built in and
//! `cairnAccessRule` entries) for a caller, an entry and an attribute;
//! [`audit`] records who made each change and what it changed.
//!
//! Between sites: [`csn`] stamps every change with a change sequence
//! number from a hybrid logical clock, and [`merge`] folds a change into
//! an entry's replicated state the same way at every node, in any order.
//!
//! A write flows: front end parses into [`entry::Entry`] / [`modify::Modification`]
//! → [`schema::Schema::validate`] → [`entry::ValidEntry`] → the store.

pub mod access;
pub mod audit;
pub mod csn;
pub mod dn;
pub mod entry;
pub mod error;
pub mod filter;
pub mod inherit;
pub mod ldif;
pub mod locate;
pub mod merge;
pub mod modify;
pub mod net;
pub mod password;
pub mod pxe;
pub mod rules;
pub mod schema;
pub mod syntax;
pub mod time;
pub mod token;

pub use error::Error;
