# Fit one lme4::lmer per feature, the way omics users do it today, and time the loop.
#
# Usage: Rscript lme4_loop.R <long.csv> <formula> <feature_col> <REML: TRUE|FALSE> <max_features|NA> <out.csv>
#
# Writes <out.csv> with columns `feature, crit` (-2 x log-likelihood: the REML criterion for REML
# fits, the deviance for ML fits; NA where lmer refuses the design) and prints the elapsed seconds of the fitting loop as the last
# line of stdout. Reading the table and splitting it by feature happen before the clock starts,
# so only lmer() and extracting its criterion are timed. Rows with a missing response are
# dropped by lmer's default na.action (na.omit), as in a plain user loop.

suppressPackageStartupMessages(library(lme4))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 6) {
  stop("usage: lme4_loop.R <long.csv> <formula> <feature_col> <REML> <max_features|NA> <out.csv>")
}
feature_col <- args[[3]]
classes <- setNames("character", feature_col)  # keep IDs such as "007" verbatim
long <- read.csv(args[[1]], colClasses = classes, check.names = FALSE)
if (!feature_col %in% names(long)) {
  stop(sprintf("feature column '%s' not in: %s", feature_col, paste(names(long), collapse = ", ")))
}
model <- as.formula(args[[2]])
reml <- as.logical(args[[4]])
max_features <- suppressWarnings(as.integer(args[[5]]))

features <- unique(long[[feature_col]])  # order of first appearance
if (!is.na(max_features)) features <- head(features, max_features)
per_feature <- split(long, factor(long[[feature_col]], levels = features))

crit <- numeric(length(features))
start <- proc.time()[["elapsed"]]
for (i in seq_along(features)) {
  # lmer refuses some designs (e.g. no more observations than random effects): NA, not a halt.
  crit[i] <- tryCatch(
    -2 * as.numeric(logLik(lmer(model, data = per_feature[[i]], REML = reml))),
    error = function(e) NA_real_
  )
}
elapsed <- proc.time()[["elapsed"]] - start

write.csv(data.frame(feature = features, crit = crit), args[[6]], row.names = FALSE)
cat(sprintf("%.6f\n", elapsed))
