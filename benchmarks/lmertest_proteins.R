# Per-protein lme4 + lmerTest fits of one model, the peer of benchmarks/bench_spikein_inference.py.
# Usage: Rscript lmertest_proteins.R long.csv formula contrast_term out.csv
# long.csv: protein, peptide, sample, condition, y (observed values only).
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
long <- read.csv(args[1], stringsAsFactors = TRUE)
formula <- as.formula(paste("y", args[2]))
term <- args[3]
start <- proc.time()[["elapsed"]]
rows <- lapply(split(long, long$protein, drop = TRUE), function(d) {
  out <- data.frame(protein = as.character(d$protein[1]), estimate = NA, se = NA, df = NA, p = NA)
  fit <- tryCatch(suppressMessages(suppressWarnings(lmer(formula, d))), error = function(e) NULL)
  if (!is.null(fit)) {
    co <- tryCatch(summary(fit)$coefficients, error = function(e) NULL)
    if (!is.null(co) && term %in% rownames(co)) {
      out$estimate <- co[term, "Estimate"]; out$se <- co[term, "Std. Error"]
      out$df <- co[term, "df"]; out$p <- co[term, "Pr(>|t|)"]
    }
  }
  out
})
seconds <- proc.time()[["elapsed"]] - start
result <- do.call(rbind, rows)
attr(result, "seconds") <- seconds
write.csv(result, args[4], row.names = FALSE)
cat(seconds, "\n")
