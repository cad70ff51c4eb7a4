# lme4's REML fits of the problems in problems.csv: y ~ condition + (x|donor), one per problem.
# Usage (from the repository root): Rscript tests/data/singular/make_reference.R
suppressPackageStartupMessages(library(lme4))
dir <- "tests/data/singular"
d <- read.csv(file.path(dir, "problems.csv"))
out <- do.call(rbind, lapply(split(d, factor(d$problem, levels = unique(d$problem))), function(p) {
  fit <- lmer(y ~ condition + (x | donor), data = p, REML = TRUE)
  th <- getME(fit, "theta")
  data.frame(problem = p$problem[1], crit = REMLcrit(fit), theta_intercept = th[[1]],
             theta_slope_intercept = th[[2]], theta_slope = th[[3]])
}))
write.csv(out, file.path(dir, "lme4.csv"), row.names = FALSE)
