from services.budget.service import BudgetService

BudgetService.main()
