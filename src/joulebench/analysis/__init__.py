"""Pure statistics over trial tables: summaries, effects, Pareto fronts."""
