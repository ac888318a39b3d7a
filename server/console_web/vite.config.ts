/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The coordinator serves the built console under /console (server/console_api/app.py).
export default defineConfig({
  base: "/console/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  test: {
    environment: "jsdom",
    setupFiles: ["./src/test/setup.ts"],
    include: ["src/**/*.test.tsx"],
    testTimeout: 30000,
    // One module graph for all files: MUI and recharts are imported once, not per file.
    isolate: false,
    fileParallelism: false,
  },
});
