"""kvroute_sim package."""
