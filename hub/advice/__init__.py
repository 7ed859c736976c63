"""Advice from demand: replaying what people asked for against layouts and placements.

- `trace`: the CSV shape of a demand trace (recorded by podbay, or derived from a public one);
- `replay`: a trace over an inventory with a placement policy and a layout per GPU;
- `bound`: the fewest refusals any placement could have had (benchmarks only).
"""
