//! Helpers for the end-to-end tests: reach the test bed, make namespaces that clean up
//! after themselves, and wait for conditions with a deadline.
