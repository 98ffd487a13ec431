/**
 * The texts of the setup mistakes a user makes, in one place, each naming what to fix.
 * Tests compare against these instead of pattern-matching prose.
 */
export const MESSAGES = {
  transactionNeedsDataSource:
    "step.transaction(work) needs the application's DataSource: configure WorkflowModule.forRoot({ dataSource }) " +
    "(a DataSource or its @nestjs/typeorm name), so the step's writes and its settlement can share one transaction.",
  transactionTwice: (jobId: string) =>
    `step.transaction(work) was called a second time in one delivery of step ${jobId}; a step settles once, so it has one transaction.`,
  unknownWorkerWorkflow: (name: string, known: string[]) =>
    `worker.workflows lists "${name}", but no provider has @StepRunner('${name}'). Known runners: ${known.join(', ') || '(none)'}.`,
  duplicateWorkflow: (name: string, first: string, second: string) =>
    `Workflow "${name}" is claimed by two classes: ${first} and ${second}. Give each @StepRunner a unique name.`,
  missingRunStep: (cls: string, name: string) =>
    `${cls} has @StepRunner('${name}') but no runStep(step) method. Implement StepRunner: runStep(step) returns a StepOutcome.`,
  foreignEntityManager: (call: string) =>
    `${call}({ manager }) needs an EntityManager of the DataSource WorkflowModule uses. Configure ` +
    'WorkflowModule.forRoot({ dataSource }) with that DataSource (or its @nestjs/typeorm name).',
  migrationLockTimeout: (seconds: number) =>
    `Timed out after ${seconds} s waiting for the schema migration lock held by another process.`,
  importedTwice: (count: number) =>
    `WorkflowModule is imported ${count} times in this app (forRoot/forRootAsync). Import it once, ` +
    'e.g. in the root module: it is global, so every module can inject WorkflowService.',
  missingTables: (prefix: string, detail: string) =>
    `autoMigrate is off and the workflow tables ("${prefix}migrations"...) are missing (${detail}). ` +
    'Run the migrations from createWorkflowMigrations(tablePrefix) / WORKFLOW_MIGRATIONS, or set autoMigrate: true.',
  schemaBehind: (prefix: string, versions: number[]) =>
    `autoMigrate is off and the workflow schema ("${prefix}...") lacks version(s) ${versions.join(', ')}. ` +
    'Run the migrations from createWorkflowMigrations(tablePrefix) / WORKFLOW_MIGRATIONS, or set autoMigrate: true.',
  noNamedDataSource: (name: string) =>
    `WorkflowModule: no TypeORM DataSource named "${name}". Register it with TypeOrmModule.forRoot({ name: '${name}', ... }) ` +
    'or pass the DataSource object.',
  notADataSource: () => 'WorkflowModule: `dataSource` must be a TypeORM DataSource or the name of one.',
  dashboardUnguarded: (path: string) =>
    `WorkflowDashboardModule at ${path} has no guards: it would show every run's data and actions to anyone who ` +
    'can reach the server. Pass `guards: [YourAuthGuard]`, or `allowUnauthenticated: true` for a local tool.',
  dashboardPath: (path: unknown) =>
    `WorkflowDashboardModule: path ${JSON.stringify(path)} is not a plain route path ` +
    "(segments of letters, digits, '.', '_', '~', '-'), e.g. '/workflows' or '/admin/workflows'.",
  dashboardGuards: () => 'WorkflowDashboardModule: `guards` must be an array of guard classes (CanActivate).',
} as const;
