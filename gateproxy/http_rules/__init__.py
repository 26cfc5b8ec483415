"""HTTP rules: what changes in the headers both ways, and the requests no upstream should see."""
