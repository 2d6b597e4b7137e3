"""Pure data code: loading sources into arrays, label noise, synthetic sets."""
