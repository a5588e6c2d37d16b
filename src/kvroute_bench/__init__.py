"""kvroute_bench package."""
