"""Served mode, engine-agnostic: start an OpenAI-compatible server (recipes), drive it with a
load generator (closed loop or Poisson), time every token from the stream, and find the
steady-state window. Engines add only a recipe."""
from joulebench.backends.served.loadgen import LoadGenerator, LoadSpec, SteadyState, poisson_arrivals, steady_state
from joulebench.backends.served.recipes import RECIPES, ServerRecipe, get_recipe
from joulebench.backends.served.server import ServerProcess, free_port
from joulebench.backends.served.session import ServedSession

__all__ = ["LoadGenerator", "LoadSpec", "SteadyState", "poisson_arrivals", "steady_state", "RECIPES",
           "ServerRecipe", "get_recipe", "ServerProcess", "free_port", "ServedSession"]
