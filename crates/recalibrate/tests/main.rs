//! Integration tests of `sluice-recalibrate`: every rule on the in-process store on a
//! manual clock (a real store), and a property test over arbitrary observations.

mod never_panics;
mod rules;
mod support;
