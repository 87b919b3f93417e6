//! Cross-crate tests: real `cairnd` processes driven by real clients.
//!
//! One test binary (link time dominates on two cores); topics are modules.
//! The binaries under test are the workspace's own `cairnd` and `cairn`,
//! built by the test command before this runs (see README).

mod kit;

mod access;
mod audit;
mod boot;
mod cli;
mod crash;
mod dns;
mod durability;
mod federation;
mod hostile;
mod images;
mod ldap3_client;
mod netboot;
mod openldap;
mod protos;
mod site;
mod tftp;
mod tls;
