import "@testing-library/jest-dom/vitest";
import { cleanup, configure } from "@testing-library/react";
import { afterEach } from "vitest";

afterEach(() => {
  cleanup();
  sessionStorage.clear();
});

// jsdom has no ResizeObserver; the charts' container needs one.
class NoResize { observe() {} unobserve() {} disconnect() {} }
(globalThis as unknown as { ResizeObserver: unknown }).ResizeObserver ??= NoResize;

// A shared CI machine can be slow to render MUI; wait longer than the 1 s default.
configure({ asyncUtilTimeout: 10000 });
